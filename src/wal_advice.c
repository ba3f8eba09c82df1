/*-------------------------------------------------------------------------
 *
 * wal_advice.c
 *	  The measurements behind ws.wal_report and the way ws.tune_wal applies
 *	  its advice.
 *
 * ws._wal_flush_probe measures what a synchronous commit waits for on this
 * server: it writes a tiny non-transactional WAL record (a logical message
 * with prefix "write_scaling", which logical decoding ignores unless asked)
 * and flushes WAL up to it, a number of times, and reports the median and
 * the maximum.  ws.wal_report (SQL) combines that with pg_stat_wal and the
 * checkpointer's counters.
 *
 * ws._alter_system writes one setting to postgresql.auto.conf exactly as
 * ALTER SYSTEM does (AlterSystemSetConfigFile, superuser only).  ALTER
 * SYSTEM itself cannot run inside a function; like it, the write is not
 * transactional and takes effect at the next reload or restart.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "portability/instr_time.h"
#include "replication/message.h"
#include "utils/builtins.h"
#include "utils/guc.h"

PG_FUNCTION_INFO_V1(write_scaling_wal_flush_probe);
PG_FUNCTION_INFO_V1(write_scaling_alter_system);

static int
compare_double(const void *a, const void *b)
{
	double		x = *(const double *) a;
	double		y = *(const double *) b;

	return (x > y) - (x < y);
}

/*
 * ws._wal_flush_probe(samples int) returns table (median_us, max_us): the
 * time to flush a tiny WAL record, in microseconds.
 */
Datum
write_scaling_wal_flush_probe(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			samples = PG_GETARG_INT32(0);
	double	   *us;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	if (samples < 1 || samples > 1000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("samples must be between 1 and 1000")));
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot measure WAL flushes during recovery")));

	InitMaterializedSRF(fcinfo, 0);
	us = palloc(samples * sizeof(double));
	for (int i = 0; i < samples; i++)
	{
		instr_time	start;
		instr_time	elapsed;
		XLogRecPtr	lsn;

		CHECK_FOR_INTERRUPTS();
		INSTR_TIME_SET_CURRENT(start);
		lsn = LogLogicalMessage("write_scaling", "probe", 5, false);
		XLogFlush(lsn);
		INSTR_TIME_SET_CURRENT(elapsed);
		INSTR_TIME_SUBTRACT(elapsed, start);
		us[i] = INSTR_TIME_GET_MICROSEC(elapsed);
	}
	qsort(us, samples, sizeof(double), compare_double);

	values[0] = Float8GetDatum(us[samples / 2]);
	values[1] = Float8GetDatum(us[samples - 1]);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}

/*
 * ws._alter_system(name text, value text) does what ALTER SYSTEM SET name =
 * 'value' does.
 */
Datum
write_scaling_alter_system(PG_FUNCTION_ARGS)
{
	AlterSystemStmt *stmt = makeNode(AlterSystemStmt);
	VariableSetStmt *set = makeNode(VariableSetStmt);
	A_Const    *value = makeNode(A_Const);

	value->val.sval.type = T_String;
	value->val.sval.sval = text_to_cstring(PG_GETARG_TEXT_PP(1));
	value->location = -1;

	set->kind = VAR_SET_VALUE;
	set->name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	set->args = list_make1(value);
	stmt->setstmt = set;

	AlterSystemSetConfigFile(stmt);
	PG_RETURN_VOID();
}
