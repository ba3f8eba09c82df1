/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  Every write_scaling.* setting, defined in one place.
 *
 * Each setting is documented in README.md ("Settings") with its default and
 * whether it needs a restart.  The prefix is reserved, so a typo such as
 * write_scaling.max_event_store is an error instead of a silent placeholder.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/guc.h"

#include "guc.h"

/* Event stores that can hold positions in shared memory, all databases. */
int			ws_max_event_stores = 64;

/* Background workers (worker.c). */
bool		ws_workers_enabled = true;
char	   *ws_worker_role = NULL;
int			ws_launcher_naptime = 10000;
int			ws_snapshot_naptime = 1000;
int			ws_snapshot_batch_size = 100;

/*
 * The buffered bulk-insert path (bulk.c).  Each flush is a COPY with a
 * start-up cost of its own (its 1000 row slots, among others): flushing
 * 10,000 rows at a time makes that cost small.
 */
int			ws_batch_rows = 10000;
int			ws_batch_bytes = 8192;
bool		ws_buffered_async_commit = false;
bool		ws_shard_one_round_trip = true;
int			ws_queue_workers = 2;
int			ws_queue_batch_size = 500;
int			ws_queue_naptime = 1000;
int			ws_queue_rotation = 10000;
int			ws_request_retention = 3600;

/*
 * ws_define_gucs registers the settings; called from _PG_init.
 */
void
ws_define_gucs(void)
{
	DefineCustomBoolVariable("write_scaling.workers",
							 "Runs write_scaling's background workers.",
							 "Off stops the snapshot workers; the launcher stays and waits.",
							 &ws_workers_enabled,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("write_scaling.worker_role",
							   "Role the per-database workers connect as; empty means the bootstrap superuser.",
							   "Takes effect when a worker starts.",
							   &ws_worker_role,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("write_scaling.launcher_naptime",
							"Time between the launcher's looks for databases that need a worker.",
							NULL,
							&ws_launcher_naptime,
							10000, 100, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("write_scaling.snapshot_naptime",
							"Time between the snapshot worker's passes when it has nothing to do.",
							NULL,
							&ws_snapshot_naptime,
							1000, 10, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("write_scaling.snapshot_batch_size",
							"Streams the snapshot worker snapshots in one transaction.",
							NULL,
							&ws_snapshot_batch_size,
							100, 1, 100000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("write_scaling.batch_rows",
							"Rows ws.buffered_insert keeps per table before it flushes them.",
							NULL,
							&ws_batch_rows,
							10000, 1, 1000000,
							PGC_USERSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("write_scaling.batch_bytes",
							"Bytes ws.buffered_insert keeps per table before it flushes them.",
							NULL,
							&ws_batch_bytes,
							8192, 1, 1024 * 1024,
							PGC_USERSET,
							GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("write_scaling.shard_one_round_trip",
							 "Sends the single row of an autocommit INSERT into a distributed table at commit, in one round trip.",
							 "It goes as a statement of its own on a connection of write_scaling's, where postgres_fdw's remote transaction takes three round trips; so do an autocommit single-row upsert and an autocommit UPDATE or DELETE by key.",
							 &ws_shard_one_round_trip,
							 true,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("write_scaling.buffered_async_commit",
							 "Commits transactions that used ws.buffered_insert with synchronous_commit off.",
							 "A crash can then lose the last few hundred milliseconds of such commits, never corrupt data.",
							 &ws_buffered_async_commit,
							 false,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("write_scaling.queue_workers",
							"Queue workers per database with topics.",
							"Worker w of n applies the lanes with (topic_id + lane) mod n = w - 1.",
							&ws_queue_workers,
							2, 0, 32,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("write_scaling.queue_batch_size",
							"Messages a queue worker applies in one transaction, at most.",
							NULL,
							&ws_queue_batch_size,
							500, 1, 100000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("write_scaling.queue_naptime",
							"Longest sleep of an idle queue worker; enqueues wake it at once.",
							NULL,
							&ws_queue_naptime,
							1000, 10, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("write_scaling.queue_rotation",
							"Time between two moves of ws.queue to its next slot.",
							"A retired slot is truncated once its messages are applied.",
							&ws_queue_rotation,
							10000, 100, 24 * 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("write_scaling.request_retention",
							"How long ws.request_status remembers applied requests.",
							NULL,
							&ws_request_retention,
							3600, 1, 365 * 24 * 3600,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	/*
	 * Settings of shared memory exist only when the library is preloaded:
	 * PostgreSQL refuses PGC_POSTMASTER settings defined later.
	 */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("write_scaling.max_event_stores",
								"Maximum number of event stores, across all databases, that can be appended to.",
								"Each event store takes one slot of shared memory for its position counter and in-flight appends.",
								&ws_max_event_stores,
								64, 1, 10000,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

	MarkGUCPrefixReserved("write_scaling");
}
