"""The `minitron` command line: one module per command, each thin (options -> library call -> rendering)."""
