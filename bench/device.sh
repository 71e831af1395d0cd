#!/usr/bin/env bash
# The accelerator figures in one JSON file (bench/README.md, "Device script"); e.g. --tiny.
cd "$(dirname "$0")/.." && exec python bench/device.py "$@"
