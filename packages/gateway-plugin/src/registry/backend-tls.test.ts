import { backendServerName, backendTlsOptions } from './backend-tls';

describe('backendServerName', () => {
  it.each([
    ['https://backend.example:8443/api', 'backend.example'],
    ['https://Backend.EXAMPLE/', 'backend.example'],
    // SNI carries no trailing dot (RFC 6066 §3); the certificate check ignores it anyway.
    ['https://backend.example./', 'backend.example'],
    // An IP is never a server name: '' sends no SNI and verifies against the IP.
    ['https://127.0.0.1:8443/', ''],
    ['https://[::1]:8443/', ''],
    ['https://[2001:db8::1]/', ''],
  ])('%s: %j', (url, name) => {
    expect(backendServerName(new URL(url))).toBe(name);
  });
});

describe('backendTlsOptions', () => {
  it("takes the URL's name unless servername overrides it, and keeps the trust options", () => {
    const url = new URL('https://10.0.0.5:8443/');
    expect(backendTlsOptions(url, { rejectUnauthorized: true })).toEqual({
      servername: '',
      rejectUnauthorized: true,
      ALPNProtocols: ['http/1.1'],
    });
    expect(
      backendTlsOptions(url, {
        ca: 'CA',
        cert: 'CERT',
        key: 'KEY',
        servername: 'backend.internal',
        rejectUnauthorized: false,
      }),
    ).toEqual({
      ca: 'CA',
      cert: 'CERT',
      key: 'KEY',
      servername: 'backend.internal',
      rejectUnauthorized: false,
      ALPNProtocols: ['http/1.1'],
    });
  });
});
