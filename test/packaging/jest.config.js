// `npm run test:pack`: the packaging test alone (an npm install and a
// TypeScript compile: too slow for `npm test`). The e2e project of the main
// config leaves test/packaging/ out.
/** @type {import('jest').Config} */
module.exports = {
  rootDir: '../..',
  displayName: 'packaging',
  testEnvironment: 'node',
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: '<rootDir>/tsconfig.jest.json' }] },
  testMatch: ['<rootDir>/test/packaging/**/*.test.ts'],
};
