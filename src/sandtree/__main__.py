from sandtree.cli import main

main()
