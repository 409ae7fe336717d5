import sys

try:
    from nrc_cli.cli import main
except KeyboardInterrupt:  # Ctrl-C in the first milliseconds, before nrc_cli.cli takes over
    sys.stderr.write("error: interrupted\n")
    raise SystemExit(130) from None

main()
