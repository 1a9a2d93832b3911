import { brokerUrlNamesUser } from './broker-url';

describe('brokerUrlNamesUser: a user mqtt.js sends as the username by itself', () => {
  it.each([
    ['mqtt://alice@127.0.0.1:1883', true],
    ['wss://al%40ice@broker.example/mqtt', true],
    ['mqtt://127.0.0.1:1883', false],
    // mqtt.js decodes it to a:b: user a, and the URL's password over the one given.
    ['mqtt://a%3Ab@127.0.0.1:1883', false],
    ['mqtt://alice:secret@127.0.0.1:1883', false],
    // WHATWG reads the user alice; mqtt.js sends "alice:".
    ['mqtt://alice:@127.0.0.1:1883', false],
    ['mqtt://:secret@127.0.0.1:1883', false],
    ['not a url', false],
  ])('%s → %s', (url, named) => {
    expect(brokerUrlNamesUser(url)).toBe(named);
  });
});
