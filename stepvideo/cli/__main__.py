"""`python -m stepvideo.cli ...`: the same as the `stepvideo` command."""

from stepvideo.cli import main

main()
