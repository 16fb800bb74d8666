from cmi_cli.app import main

main()
