#!/usr/bin/env node
'use strict';
// Committed, not built: npm links a package's bins when it installs it, before
// the root `prepare` script builds dist/, and skips a bin whose file does not
// exist yet, so a bin pointing into dist/ is never linked in a fresh clone.
const { existsSync } = require('node:fs');
const path = require('node:path');

const cli = path.join(__dirname, '..', 'dist', 'cli', 'index.js');
if (!existsSync(cli)) {
  process.stderr.write(
    `loadwise: ${cli} is not built yet: run \`npm run build\` (tsc -b) at the repository root\n`,
  );
  process.exit(1);
}
require(cli).run(process.argv.slice(2));
