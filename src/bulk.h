/*-------------------------------------------------------------------------
 *
 * bulk.h
 *	  Buffered bulk inserts through COPY FROM.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WS_BULK_H
#define WS_BULK_H

#include "postgres.h"

extern Size ws_bulk_shmem_size(void);
extern void ws_bulk_shmem_init(void);
extern void ws_bulk_register_callbacks(void);
extern bool ws_bulk_has_rows(void);
extern void ws_bulk_get_ahead_of_fdw(void);
extern bool ws_bulk_flushing_at_commit(void);
extern void ws_bulk_check_fdw_use(void);
extern void ws_bulk_end_of_statement(void);

#endif							/* WS_BULK_H */
