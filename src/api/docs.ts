// GET /docs: openapi.yaml rendered by Swagger UI from files this service serves itself
// (swagger-ui-dist from node_modules), so the page works on a host without internet access.
// Nothing on the page comes from another origin, and its Content-Security-Policy says so.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { Router, type RequestHandler } from 'express';

/** The policy of /docs: own scripts only (no inline script), images also as data: URIs. */
const DOCS_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'";

// BaseLayout: no top bar (it would offer to load any other spec by URL), so no standalone preset.
// queryConfigEnabled stays off (the default): ?url=... cannot point the page elsewhere.
const INIT_JS = `window.addEventListener('load', function () {
  window.ui = SwaggerUIBundle({
    url: '/openapi.yaml',
    dom_id: '#swagger-ui',
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: 'BaseLayout',
  });
});
`;

interface Asset {
  type: string;
  body: Buffer | string;
  cacheControl: string;
}

export function docsRoutes(): Router {
  const require = createRequire(import.meta.url);
  const dist = dirname(require.resolve('swagger-ui-dist/package.json'));
  const version = (JSON.parse(readFileSync(join(dist, 'package.json'), 'utf8')) as { version: string }).version;
  // The vendor files change only with the package: the version in their URL lets a browser keep them.
  const vendor = (file: string, type: string): Asset => ({
    type,
    body: readFileSync(join(dist, file)),
    cacheControl: 'public, max-age=86400',
  });
  const assets: Record<string, Asset> = {
    'swagger-ui.css': vendor('swagger-ui.css', 'text/css; charset=utf-8'),
    'swagger-ui-bundle.js': vendor('swagger-ui-bundle.js', 'text/javascript; charset=utf-8'),
    'init.js': { type: 'text/javascript; charset=utf-8', body: INIT_JS, cacheControl: 'no-cache' },
  };
  const html = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Position Manager API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css?v=${version}"></head><body>
<div id="swagger-ui"></div>
<noscript>The contract is at <a href="/openapi.yaml">/openapi.yaml</a>.</noscript>
<script src="/docs/assets/swagger-ui-bundle.js?v=${version}"></script>
<script src="/docs/assets/init.js"></script></body></html>`;

  const router = Router();
  const csp: RequestHandler = (_req, res, next) => {
    res.setHeader('Content-Security-Policy', DOCS_CSP);
    next();
  };
  router.get('/docs', csp, (_req, res) => {
    res.setHeader('Cache-Control', 'no-cache');
    res.type('html').send(html);
  });
  // One fixed route per file (each its own metrics label); any other path under /docs is a 404.
  for (const [name, asset] of Object.entries(assets)) {
    router.get(`/docs/assets/${name}`, csp, (_req, res) => {
      res.setHeader('Cache-Control', asset.cacheControl);
      res.setHeader('X-Content-Type-Options', 'nosniff');
      res.type(asset.type).send(asset.body);
    });
  }
  return router;
}
