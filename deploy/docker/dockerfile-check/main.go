// dockerfile-check runs BuildKit's own Dockerfile frontend on Dockerfiles without a Docker engine: it parses
// them, converts every stage to LLB (the build graph `docker build` would run) and applies the build checks
// of `docker build --check`. Base images are not pulled: each FROM resolves to an empty linux/amd64 image
// with the usual PATH, so a check that needs the real base image config can differ from a real build.
//
// Usage: dockerfile-check [-arg KEY=VALUE]... Dockerfile...   (exit 1 on any error or check warning)
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerui"
	digest "github.com/opencontainers/go-digest"
)

// offlineResolver stands in for a registry: every image is an empty linux/amd64 image.
type offlineResolver struct{}

func (offlineResolver) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	config := map[string]any{
		"os":           "linux",
		"architecture": "amd64",
		"rootfs":       map[string]any{"type": "layers"},
		"config":       map[string]any{"Env": []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}},
	}
	dt, err := json.Marshal(config)
	if err != nil {
		return "", "", nil, err
	}
	return ref, digest.FromBytes([]byte(ref)), dt, nil
}

type buildArgs map[string]string

func (b buildArgs) String() string { return fmt.Sprint(map[string]string(b)) }
func (b buildArgs) Set(v string) error {
	key, value, ok := strings.Cut(v, "=")
	if !ok {
		return fmt.Errorf("want KEY=VALUE, got %q", v)
	}
	b[key] = value
	return nil
}

func check(ctx context.Context, path string, args buildArgs) (int, error) {
	dt, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	// The source map ties check findings to lines; like dockerui, its definition is the Dockerfile's context.
	src := llb.Local("dockerfile")
	def, err := src.Marshal(ctx)
	if err != nil {
		return 0, err
	}
	sourceMap := llb.NewSourceMap(&src, path, "Dockerfile", dt)
	sourceMap.Definition = def
	opt := dockerfile2llb.ConvertOpt{
		Config:       dockerui.Config{BuildArgs: args},
		SourceMap:    sourceMap,
		MetaResolver: offlineResolver{},
	}
	results, err := dockerfile2llb.DockerfileLint(ctx, dt, opt)
	if err != nil {
		return 0, err
	}
	problems := 0
	for _, w := range results.Warnings {
		line := int32(0)
		if w.Location != nil && len(w.Location.Ranges) > 0 {
			line = w.Location.Ranges[0].Start.Line
		}
		fmt.Printf("%s:%d: %s: %s\n", path, line, w.RuleName, w.Detail)
		problems++
	}
	if results.Error != nil {
		fmt.Printf("%s: error: %s\n", path, results.Error.Message)
		return problems + 1, nil
	}
	// The default target too, converted and marshalled as `docker build` would send it.
	res, err := dockerfile2llb.Dockerfile2LLB(ctx, dt, opt)
	if err != nil {
		fmt.Printf("%s: error: %v\n", path, err)
		return problems + 1, nil
	}
	if _, err := res.State.Marshal(ctx); err != nil {
		fmt.Printf("%s: error: %v\n", path, err)
		return problems + 1, nil
	}
	return problems, nil
}

func main() {
	args := buildArgs{}
	flag.Var(args, "arg", "build argument KEY=VALUE (repeatable)")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: dockerfile-check [-arg KEY=VALUE]... Dockerfile...")
		os.Exit(2)
	}
	ctx := context.Background()
	total := 0
	for _, path := range flag.Args() {
		n, err := check(ctx, path, args)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			os.Exit(2)
		}
		if n == 0 {
			fmt.Printf("%s: ok\n", path)
		}
		total += n
	}
	if total > 0 {
		os.Exit(1)
	}
}
