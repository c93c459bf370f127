-- Up Migration
-- R-22 publishes after every committed change, also one that leaves the figures as they were:
-- the sum of the positions' versions at the last publication tells whether one happened since.
alter table portfolio_publish_state add column if not exists last_versions numeric;
-- as if published now: the first run after the upgrade announces only a real change
update portfolio_publish_state set last_versions = (select coalesce(sum(version), 0) from positions);

-- Down Migration
alter table portfolio_publish_state drop column if exists last_versions;
