/*-------------------------------------------------------------------------
 *
 * bulk.h
 *	  Buffered bulk inserts through COPY FROM, or straight into a plain
 *	  table (bulk_direct.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef WS_BULK_H
#define WS_BULK_H

#include "postgres.h"

#include "access/htup.h"
#include "utils/relcache.h"

extern Size ws_bulk_shmem_size(void);
extern void ws_bulk_shmem_init(void);
extern void ws_bulk_register_callbacks(void);
extern bool ws_bulk_has_rows(void);
extern void ws_bulk_get_ahead_of_fdw(void);
extern bool ws_bulk_flushing_at_commit(void);
extern void ws_bulk_check_fdw_use(void);
extern void ws_bulk_end_of_statement(void);

/* bulk_direct.c */
extern bool ws_bulk_direct_applies(Relation rel);
extern uint64 ws_bulk_insert_direct(Relation rel, HeapTuple *tuples, int ntuples);

#endif							/* WS_BULK_H */
