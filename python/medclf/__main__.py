from medclf.cli import main

raise SystemExit(main())
