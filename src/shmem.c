/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  Requests and initialises write_scaling's shared memory.
 *
 * Each capability that keeps state in shared memory exports a size function
 * and an init function; this file adds them up in shmem_request_hook and
 * calls them in shmem_startup_hook, under AddinShmemInitLock.  The same
 * startup hook runs again after a crash restart, when shared memory is
 * created anew: every structure is rebuilt from its tables, never trusted
 * from before the crash.
 *
 * All of write_scaling's LWLocks share one tranche, "write_scaling", so they
 * show up under that name in pg_stat_activity.wait_event.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"

#include "bulk.h"
#include "frontier.h"
#include "queue.h"
#include "shard.h"
#include "shmem.h"
#include "worker.h"

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* Set in the postmaster at startup and inherited by every backend. */
static int	lwlock_tranche_id = 0;

static void ws_shmem_request(void);
static void ws_shmem_startup(void);

/*
 * ws_shmem_install_hooks chains our hooks in front of earlier ones; called
 * from _PG_init only when the library is in shared_preload_libraries.
 */
void
ws_shmem_install_hooks(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = ws_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = ws_shmem_startup;
}

/*
 * ws_lwlock_tranche_id returns the tranche of every write_scaling LWLock.
 */
int
ws_lwlock_tranche_id(void)
{
	return lwlock_tranche_id;
}

static void
ws_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();

	RequestAddinShmemSpace(add_size(add_size(add_size(ws_frontier_shmem_size(), ws_worker_shmem_size()),
											 add_size(ws_bulk_shmem_size(), ws_queue_shmem_size())),
									ws_shard_shmem_size()));
}

static void
ws_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	/* Shared memory is new here, after a crash restart too: so is the id. */
	lwlock_tranche_id = LWLockNewTrancheId();
	LWLockRegisterTranche(lwlock_tranche_id, "write_scaling");

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	ws_frontier_shmem_init();
	ws_worker_shmem_init();
	ws_bulk_shmem_init();
	ws_queue_shmem_init();
	ws_shard_shmem_init();
	LWLockRelease(AddinShmemInitLock);
}
