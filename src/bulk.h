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

#endif							/* WS_BULK_H */
