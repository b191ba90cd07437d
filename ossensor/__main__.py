from ossensor.cli import main

raise SystemExit(main())
