from hetmpi.cli import main

main()
