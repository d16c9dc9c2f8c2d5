from agegender.cli import main

main()
