from embedtrain.cli import main

raise SystemExit(main())
