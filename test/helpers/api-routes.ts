// The service's /api/v1 routes, each with a concrete path (asset BTCUSDT), for tests that walk every route.

/** Every /api/v1 route as [method, path], in a fixed order. */
export const API_V1_ROUTES = [
  'GET /api/v1/positions',
  'GET /api/v1/positions/BTCUSDT',
  'GET /api/v1/portfolio',
  'GET /api/v1/portfolio/exposure',
  'GET /api/v1/portfolio/pnl',
  'POST /api/v1/positions/BTCUSDT/validate',
  'POST /api/v1/positions/BTCUSDT/snapshot',
  'GET /api/v1/positions/BTCUSDT/snapshots',
].map((route) => route.split(' ') as [method: string, path: string]);
