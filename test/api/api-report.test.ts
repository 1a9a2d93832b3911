/**
 * The public API of each package, as API Extractor reads it from the built
 * declarations (dist/index.d.ts), must equal its committed report
 * (packages/<name>/api/<name>.api.md). A change to the surface is then a
 * visible diff in review: `npm run api:update` rewrites the reports. A type
 * the surface uses but the entry point does not export (an internal leaking
 * out) is an ae-forgotten-export warning, which fails here too.
 */
import path from 'node:path';
import { Extractor, ExtractorConfig, type ExtractorMessage } from '@microsoft/api-extractor';

const ROOT = path.join(__dirname, '..', '..');
const PACKAGES = ['protocol', 'health-agent', 'gateway-plugin'];

describe.each(PACKAGES)('the public API of @loadwise/%s', (name) => {
  it('equals its committed report, with no internal type leaking out', () => {
    const config = ExtractorConfig.loadFileAndPrepare(
      path.join(ROOT, 'packages', name, 'api-extractor.json'),
    );
    const messages: string[] = [];
    const result = Extractor.invoke(config, {
      localBuild: false,
      messageCallback: (m: ExtractorMessage) => {
        if (m.logLevel === 'error' || m.logLevel === 'warning') messages.push(m.text);
        m.handled = true;
      },
    });
    expect({ messages, apiReportChanged: result.apiReportChanged }).toEqual({
      messages: [],
      apiReportChanged: false,
    });
  });
});
