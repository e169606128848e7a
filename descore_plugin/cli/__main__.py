from descore_plugin.cli.commands import main

raise SystemExit(main())
