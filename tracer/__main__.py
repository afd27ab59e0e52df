from cnitrace.cli import main

raise SystemExit(main())
