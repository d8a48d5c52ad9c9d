from spectral_forensics.cli import main

raise SystemExit(main())
