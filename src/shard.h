/*-------------------------------------------------------------------------
 *
 * shard.h
 *	  Shard maps, the key hash, and routing rows to shard servers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WS_SHARD_H
#define WS_SHARD_H

#include "postgres.h"

#include "utils/relcache.h"

extern uint64 ws_key_hash(const char *bytes, int len, uint64 seed);
extern int	ws_key_slot(const char *bytes, int len, int nslots);
extern void ws_shard_register_callbacks(void);
extern bool ws_shard_prepare_connections(Relation view);
extern bool ws_shard_can_run_alone(Oid serverid);
extern void ws_shard_run_alone(Oid serverid, const char *sql, int nparams,
							   const char *const *values);
extern Size ws_shard_shmem_size(void);
extern void ws_shard_shmem_init(void);

#endif							/* WS_SHARD_H */
