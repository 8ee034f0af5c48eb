#!/usr/bin/env bash
# Debian packages the local stack and tests need: redis-server (the Redis of the stack) and opencv-data (the
# Haar cascade files, which OpenCV 5 wheels no longer ship). Installs only what is missing; needs root or sudo.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -f /usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml ] || missing+=(opencv-data)
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing Debian packages: ${missing[*]}"
timeout 600 $SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
