// One SQL call per request (retryingConflicts in src/db/query.ts): a deadlock or serialization
// failure, after which nothing was written, is run again; any other error is not.
import t from 'tap';
import { queryValue, QUERY_ATTEMPTS, retryingConflicts } from '../../src/db/query.js';
import { freshDatabase } from '../helpers/db.js';

const db = await freshDatabase(t);
const queryOne = (sql: string, params: unknown[]) => queryValue(retryingConflicts(db.pool), sql, params);
// fails with the given SQLSTATE on its first `failures` calls (counted in a sequence, which a
// rollback does not undo), then answers
await db.query(`create function flaky(code text, failures int) returns int language plpgsql as $$
  begin
    if nextval('flaky_calls') <= failures then raise exception 'flaky %', code using errcode = code; end if;
    return 1;
  end $$`);
const reset = () => db.query('drop sequence if exists flaky_calls; create sequence flaky_calls');
const calls = async () => Number((await db.query('select last_value from flaky_calls')).rows[0].last_value);

t.test('a deadlock or serialization failure is run again, up to three attempts', async (t) => {
  for (const code of ['40P01', '40001']) {
    await reset();
    t.equal(await queryOne('select flaky($1, 2) as r', [code]), 1, `${code} twice, then the answer`);
    t.equal(await calls(), 3);
    await reset();
    await t.rejects(queryOne('select flaky($1, 5) as r', [code]), { code }, `${code} every time: the error`);
    t.equal(await calls(), QUERY_ATTEMPTS, 'after three attempts');
  }
});

t.test('any other error is not run again', async (t) => {
  await reset();
  await t.rejects(queryOne("select flaky('22023', 1) as r", []), { code: '22023' });
  t.equal(await calls(), 1);
});
