-- keep_warm: after a deployment served a request, its last runner stays
-- for this long after that request even when its idle timeout would stop
-- it, so the next burst finds a warm runner. 0 (the default) keeps
-- today's behaviour: idle_timeout alone decides. The runner's lifetime is
-- billed per runner-second like any runner's.
ALTER TABLE deployments
    ADD COLUMN keep_warm_ms bigint NOT NULL DEFAULT 0 CHECK (keep_warm_ms >= 0);
