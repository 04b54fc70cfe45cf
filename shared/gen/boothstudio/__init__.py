"""Generated from protos/boothstudio. Do not edit: run `make protos`."""
