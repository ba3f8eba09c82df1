/*-------------------------------------------------------------------------
 *
 * stats.c
 *	  Set-returning functions behind the ws.stat_* views and ws.stats.
 *
 * Counters live in shared memory (frontier.c for event stores) and are
 * copied out under their locks; they start from zero at server start, as
 * pg_stat_statements' do without a save file.  Without shared_preload_libraries
 * the functions return no rows.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "frontier.h"
#include "worker.h"

PG_FUNCTION_INFO_V1(write_scaling_event_store_stats);
PG_FUNCTION_INFO_V1(write_scaling_worker_stats);

/*
 * ws._event_store_stats() returns one row per event store of this database
 * that has been used since the server started.
 */
Datum
write_scaling_event_store_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	WsStoreReport *reports;
	int			n;

	InitMaterializedSRF(fcinfo, 0);
	n = ws_frontier_report(&reports);

	for (int i = 0; i < n; i++)
	{
		WsStoreReport *r = &reports[i];
		Datum		values[11];
		bool		nulls[11] = {false};

		values[0] = ObjectIdGetDatum(r->relid);
		values[1] = Int64GetDatum(r->last_position);
		nulls[1] = !r->loaded;
		values[2] = Int64GetDatum(r->safe_position);
		nulls[2] = !r->loaded;
		values[3] = Int32GetDatum(r->in_flight);
		values[4] = Int64GetDatum(r->oldest_in_flight);
		nulls[4] = (r->oldest_in_flight == 0);
		values[5] = Int32GetDatum(r->oldest_pid);
		nulls[5] = (r->oldest_pid == 0);
		values[6] = Int64GetDatum(r->counters[WS_COUNT_APPENDS]);
		values[7] = Int64GetDatum(r->counters[WS_COUNT_EVENTS]);
		values[8] = Int64GetDatum(r->counters[WS_COUNT_CONFLICTS]);
		values[9] = Int64GetDatum(r->counters[WS_COUNT_REPLAYS]);
		values[10] = BoolGetDatum(r->loaded);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * ws._worker_stats() returns one row per database the launcher has started
 * a worker for since the server started.
 */
Datum
write_scaling_worker_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	WsWorkerReport *reports;
	int			n;

	InitMaterializedSRF(fcinfo, 0);
	n = ws_worker_report(&reports);

	for (int i = 0; i < n; i++)
	{
		WsWorkerReport *r = &reports[i];
		Datum		values[7];
		bool		nulls[7] = {false};

		values[0] = ObjectIdGetDatum(r->dboid);
		values[1] = Int32GetDatum(r->pid);
		nulls[1] = (r->pid == 0);
		values[2] = CStringGetTextDatum(r->state);
		values[3] = TimestampTzGetDatum(r->last_pass);
		nulls[3] = (r->last_pass == 0);
		values[4] = Int64GetDatum(r->streams_behind);
		values[5] = Int64GetDatum(r->snapshots_taken);
		values[6] = Int64GetDatum(r->errors);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
