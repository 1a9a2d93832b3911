import { brokerUrlClientIdProblem, brokerUrlNamesUser, redactUrl } from './broker-url';

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

describe('redactUrl', () => {
  it.each([
    ['mqtt://gw:secret@broker:1883', 'mqtt://***@broker:1883'],
    // mqtt.js takes a password holding '@': nothing of it may show.
    ['mqtt://gw:p@ss@broker:1883/x?y=1', 'mqtt://***@broker:1883/x?y=***'],
    ['mqtts://broker:8883', 'mqtts://broker:8883'],
    ['mqtt://gw:p/w@broker:1883', 'mqtt://***@broker:1883'],
    ['ws://broker/mqtt?token=a@b', 'ws://broker/mqtt?token=***'],
    // A presigned URL's credentials are its query: names kept, values and fragment not.
    [
      'wss://iot.example/mqtt?X-Amz-Algorithm=AWS4&X-Amz-Signature=SECRETSIG&flag&e=#frag',
      'wss://iot.example/mqtt?X-Amz-Algorithm=***&X-Amz-Signature=***&flag&e=***',
    ],
  ])('%s -> %s', (url, shown) => {
    expect(redactUrl(url)).toBe(shown);
  });
});

describe('brokerUrlClientIdProblem: a clientId mqtt.js would take from the URL', () => {
  it.each([
    ['mqtt://b:1883?clientId=gw', true],
    ['wss://b/mqtt?token=x&clientId=', true],
    ['mqtt://b:1883', false],
    // Case matters to mqtt.js, and a repeated one is an array it leaves alone.
    ['mqtt://b:1883?clientid=gw', false],
    ['mqtt://b:1883?clientId=a&clientId=b', false],
    ['not a url', false],
  ])('%s → %s', (url, refused) => {
    expect(brokerUrlClientIdProblem(url, 'use X') !== undefined).toBe(refused);
  });

  it('says why and what to do instead', () => {
    expect(brokerUrlClientIdProblem('mqtt://b?clientId=gw', 'use X')).toBe(
      'the broker URL sets clientId, which mqtt.js gives every connection made from it (two with one id knock each other off the broker): use X',
    );
  });
});
