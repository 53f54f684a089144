from ferrymq._cli import main

raise SystemExit(main())
