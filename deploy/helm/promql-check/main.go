// promql-check parses PromQL expressions with Prometheus' own parser, so an alert rule or a documented query
// that Prometheus would refuse fails in CI instead of in the rule loader.
//
// Usage: promql-check < exprs.json   (a JSON array of expression strings; exit 1 if any does not parse)
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	var exprs []string
	if err := json.NewDecoder(os.Stdin).Decode(&exprs); err != nil {
		fmt.Fprintln(os.Stderr, "promql-check: stdin must be a JSON array of strings:", err)
		os.Exit(2)
	}
	p := parser.NewParser(parser.Options{})
	failed := 0
	for _, expr := range exprs {
		if _, err := p.ParseExpr(expr); err != nil {
			fmt.Printf("invalid: %q: %v\n", expr, err)
			failed++
		}
	}
	fmt.Printf("%d expressions, %d invalid\n", len(exprs), failed)
	if failed > 0 {
		os.Exit(1)
	}
}
