from benchmarks.bench import main

raise SystemExit(main())
