// Two projects: unit tests sit next to the code they test (src/**/*.test.ts);
// end-to-end tests in test/ run real brokers, HTTP servers and processes.
// @loadwise/* resolve to sources, so unit tests need no build; e2e tests that
// spawn the CLIs use the built dist/ (`npm test` builds first).
const common = {
  testEnvironment: 'node',
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: '<rootDir>/tsconfig.jest.json' }] },
  moduleNameMapper: {
    '^@loadwise/([a-z-]+)/internals$': '<rootDir>/packages/$1/src/internals',
    '^@loadwise/([a-z-]+)$': '<rootDir>/packages/$1/src',
  },
};

/** @type {import('jest').Config} */
module.exports = {
  // Global on purpose: jest-circus reads only the global testTimeout; a
  // project's own key is ignored, which left e2e hooks at 5 s on a busy machine.
  testTimeout: 30000,
  // Two workers, whatever the core count. Jest's default (cores - 1) runs the suite one
  // file at a time on a 2-core machine: 459 s, where two take 270 s (2026-12-05, every
  // test passing in both). The e2e files mostly wait on sockets, timers and child
  // processes; more workers than two start more brokers and gateways at once than a
  // small machine's timing guards were written for.
  maxWorkers: 2,
  projects: [
    { ...common, displayName: 'unit', testMatch: ['<rootDir>/packages/*/src/**/*.test.ts'] },
    {
      ...common,
      displayName: 'e2e',
      testMatch: ['<rootDir>/test/**/*.test.ts', '<rootDir>/bench/**/*.test.ts'],
      // Its own script, `npm run test:pack` (test/packaging/jest.config.js).
      testPathIgnorePatterns: ['/node_modules/', '<rootDir>/test/packaging/'],
    },
  ],
};
