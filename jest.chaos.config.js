// `npm run test:chaos`: the chaos scenarios (test/chaos) at full length. The
// same files run in `npm test` (the e2e project) in their short versions;
// LW_CHAOS=full selects the long ones (test/kit/chaos.ts). Set here, before
// jest starts its workers, so they inherit it.
process.env.LW_CHAOS = 'full';
const base = require('./jest.config.js');
const e2e = base.projects.find((p) => p.displayName === 'e2e');

/** @type {import('jest').Config} */
module.exports = {
  // Top level: jest reads testTimeout only here, never from a project (jest.config.js).
  testTimeout: 180000,
  projects: [
    {
      ...e2e,
      displayName: 'chaos',
      testMatch: ['<rootDir>/test/chaos/**/*.test.ts'],
      // Every chaos file, including those npm test leaves out (jest.config.js).
      testPathIgnorePatterns: ['/node_modules/'],
    },
  ],
};
