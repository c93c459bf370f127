// Baseline for bench/api.ts: a bare Express app on this machine answering GET /portfolio and
// GET /position with fixed JSON bodies (the sizes of the service's real responses), nothing else.
//   node bench/bare-express.mjs <port> <portfolio-body-file> <position-body-file>
import { readFileSync } from 'node:fs';
import express from 'express';

const [port, portfolioFile, positionFile] = process.argv.slice(2);
const portfolio = readFileSync(portfolioFile, 'utf8');
const position = readFileSync(positionFile, 'utf8');
const app = express();
app.disable('x-powered-by');
app.get('/portfolio', (_req, res) => void res.type('application/json').send(portfolio));
app.get('/position', (_req, res) => void res.type('application/json').send(position));
app.get('/health', (_req, res) => void res.json({ status: 'ok' }));
const server = app.listen(Number(port), '127.0.0.1', () => console.log('listening'));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
