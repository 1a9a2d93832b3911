// Two projects: unit tests sit next to the code they test (src/**/*.test.ts);
// end-to-end tests in test/ run real brokers, HTTP servers and processes.
// @loadwise/* resolve to sources, so unit tests need no build; e2e tests that
// spawn the CLIs use the built dist/ (`npm test` builds first).
const common = {
  testEnvironment: 'node',
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: '<rootDir>/tsconfig.jest.json' }] },
  moduleNameMapper: { '^@loadwise/([a-z-]+)$': '<rootDir>/packages/$1/src' },
};

/** @type {import('jest').Config} */
module.exports = {
  // Top level, not in the e2e project: Jest ignores a project's testTimeout
  // (jestjs/jest#9759; checked on Jest 30.5: hooks and tests got 5 s), and
  // e2e hooks that start fleets of processes need more on a busy machine.
  testTimeout: 30000,
  projects: [
    { ...common, displayName: 'unit', testMatch: ['<rootDir>/packages/*/src/**/*.test.ts'] },
    {
      ...common,
      displayName: 'e2e',
      testMatch: ['<rootDir>/test/**/*.test.ts', '<rootDir>/bench/**/*.test.ts'],
    },
  ],
};
