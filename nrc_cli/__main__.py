from nrc_cli.cli import main

main()
