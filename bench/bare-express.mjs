// Baseline for bench/api.ts: a bare Express app on this machine answering GET /portfolio and
// GET /position with fixed JSON bodies (the service's real responses), nothing else. A client
// that accepts gzip gets a copy compressed once at start (level 1, as the service's cache does),
// so both sides pay the same for compression: nothing per request.
//   node bench/bare-express.mjs <port> <portfolio-body-file> <position-body-file>
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import express from 'express';

const [port, portfolioFile, positionFile] = process.argv.slice(2);
const portfolio = readFileSync(portfolioFile, 'utf8');
const position = readFileSync(positionFile, 'utf8');
const app = express();
app.disable('x-powered-by');
const fixed = (text) => {
  const gzip = text.length >= 1024 ? gzipSync(text, { level: 1 }) : undefined;
  return (req, res) => {
    res.vary('Accept-Encoding').type('application/json');
    if (gzip && req.acceptsEncodings('gzip')) res.setHeader('Content-Encoding', 'gzip').send(gzip);
    else res.send(text);
  };
};
app.get('/portfolio', fixed(portfolio));
app.get('/position', fixed(position));
app.get('/health', (_req, res) => void res.json({ status: 'ok' }));
const server = app.listen(Number(port), '127.0.0.1', () => console.log('listening'));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
