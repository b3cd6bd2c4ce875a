from cvplatform.cli import main

main()
