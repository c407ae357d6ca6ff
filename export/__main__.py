from export.build import main

main()
