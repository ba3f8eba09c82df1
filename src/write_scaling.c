/*-------------------------------------------------------------------------
 *
 * write_scaling.c
 *	  Module load: settings, shared memory and transaction callbacks.
 *
 * Loaded through shared_preload_libraries, the library reserves shared
 * memory for event store positions (frontier.c) and the queue (queue.c), and
 * registers the launcher of the background workers (worker.c).  Loaded on first use
 * instead, the functions that need shared memory say so in their error
 * (ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE) and the others work.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"

#include "bulk.h"
#include "frontier.h"
#include "guc.h"
#include "queue.h"
#include "shard.h"
#include "shmem.h"
#include "worker.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	ws_define_gucs();

	if (process_shared_preload_libraries_in_progress)
	{
		ws_shmem_install_hooks();
		ws_register_launcher();
	}

	ws_frontier_register_callbacks();
	ws_worker_register_callbacks();
	/* Before bulk.c's: callbacks run newest first, and ours go last. */
	ws_shard_register_callbacks();
	ws_bulk_register_callbacks();
	ws_queue_register_callbacks();
}
