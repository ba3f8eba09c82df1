/*-------------------------------------------------------------------------
 *
 * frontier.c
 *	  Global positions of event stores, handed out in shared memory, and
 *	  the safe frontier below which a reader can never miss an event.
 *
 * Glossary
 *	  position	  an event's place in its store's global order (bigint, from 1).
 *	  reservation a range of positions an uncommitted append has taken.
 *	  frontier	  the highest position p such that every append that took a
 *				  position <= p has committed or aborted: every event that will
 *				  ever exist at or below p is already visible.
 *	  safe position  min(frontier, highest committed position): what readers
 *				  are told.  Capping by the committed maximum means a reader is
 *				  never told about a position that a crash could hand out again.
 *
 * Why
 *	  A sequence hands out numbers in allocation order but rows become
 *	  visible in commit order, so a reader that remembers "last position
 *	  seen" can jump past a lower position that commits later.  Instead of
 *	  serialising writers or guessing with timeouts, every reservation is
 *	  recorded here, atomically with the allocation, and removed by the
 *	  transaction callbacks.  CommitTransaction calls those callbacks after
 *	  ProcArrayEndTransaction, so when a reservation disappears its rows are
 *	  already visible to a new snapshot.  A reader therefore computes the
 *	  frontier first and takes its snapshot second (event_store.c), and reads
 *	  a closed range.  It is held back only by appends to the same store that
 *	  are still in flight, never by unrelated transactions.
 *
 * Shared state and locking
 *	  One slot per event store (write_scaling.max_event_stores in all), found
 *	  by (database, relid) under the global lock, which is taken exclusively
 *	  only to assign or free a slot.  Each slot has its own LWLock that guards
 *	  next_position, max_committed, in_flight and every backend entry that
 *	  names the slot.  Each backend has WS_MAX_STORES_PER_XACT entries
 *	  (slot, lowest reserved position); an entry changes only under the lock
 *	  of the slot it names, so a reader holding one slot's lock in shared
 *	  mode sees that slot's entries stable while other entries may change.
 *	  Counters are atomics, outside any lock.  A slot is freed when the
 *	  transaction that ran ws.drop_event_store commits (not if the drop was
 *	  rolled back, with its savepoint or its transaction), or reclaimed when
 *	  all are taken and its table no longer exists.  Slots of a dropped
 *	  database are not reclaimed before a restart.
 *
 * Transactions
 *	  Commit and abort release every reservation of the backend.  A
 *	  subtransaction abort releases the reservations made inside it (its
 *	  rows will never be visible); a subtransaction commit hands them to the
 *	  parent.  PREPARE TRANSACTION is refused for a transaction that holds a
 *	  reservation: a prepared transaction outlives the backend and even a
 *	  restart, and its positions would either hold readers back without an
 *	  owner or be forgotten by the registry.
 *
 * Crashes
 *	  Shared memory is rebuilt after a crash restart and every in-flight
 *	  append died with it.  A slot is loaded lazily, on first use, with the
 *	  highest stored position.  Appends force a synchronous commit
 *	  (event_store.c), so every position a reader could have seen is durable
 *	  and is never handed out again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/lmgr.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "frontier.h"
#include "guc.h"
#include "shmem.h"

/* Distinct event stores one transaction may append to. */
#define WS_MAX_STORES_PER_XACT	8

typedef struct WsStoreSlot
{
	Oid			dboid;			/* InvalidOid when the slot is free */
	Oid			relid;			/* the store's events table */
	LWLock		lock;
	bool		loaded;			/* next_position read from the table */
	int64		next_position;	/* first position not yet handed out */
	int64		max_committed;	/* highest position of a committed append */
	int			in_flight;		/* backend entries naming this slot */
	pg_atomic_uint64 counters[WS_NUM_COUNTERS];
} WsStoreSlot;

typedef struct WsBackendEntry
{
	int			slot;			/* -1 when unused */
	int64		min_position;	/* lowest position this backend reserved */
} WsBackendEntry;

typedef struct WsBackendReservations
{
	int			pid;
	WsBackendEntry entries[WS_MAX_STORES_PER_XACT];
} WsBackendReservations;

typedef struct WsFrontierShared
{
	LWLock		slots_lock;		/* assigning and freeing slots */
	int			nslots;
	int			nbackends;
	WsStoreSlot *slots;
	WsBackendReservations *backends;
} WsFrontierShared;

/* One reservation as the owning backend remembers it. */
typedef struct LocalReservation
{
	int			slot;
	SubTransactionId subid;
	int64		first;
	int64		last;
} LocalReservation;

static WsFrontierShared *frontier = NULL;

/* This backend's reservations in the current transaction. */
static LocalReservation *local_reservations = NULL;
static int	n_local_reservations = 0;
static int	max_local_reservations = 0;

/* Stores dropped by the current transaction: slots freed at commit. */
typedef struct DroppedStore
{
	Oid			relid;
	SubTransactionId subid;
} DroppedStore;

static DroppedStore dropped[WS_MAX_STORES_PER_XACT * 4];
static int	n_dropped = 0;

static void frontier_xact_callback(XactEvent event, void *arg);
static void frontier_subxact_callback(SubXactEvent event,
									  SubTransactionId mySubid,
									  SubTransactionId parentSubid,
									  void *arg);
static void release_all(bool committed);
static void recompute_entry(int slot);
static void free_dropped_slots(void);

static inline WsBackendReservations *
my_backend(void)
{
	Assert(MyBackendId >= 1 && MyBackendId <= frontier->nbackends);
	return &frontier->backends[MyBackendId - 1];
}

Size
ws_frontier_shmem_size(void)
{
	Size		size = MAXALIGN(sizeof(WsFrontierShared));

	size = add_size(size, mul_size(ws_max_event_stores, sizeof(WsStoreSlot)));
	size = add_size(size, mul_size(MaxBackends, sizeof(WsBackendReservations)));
	return size;
}

/*
 * ws_frontier_shmem_init lays out the registry; the caller holds
 * AddinShmemInitLock.
 */
void
ws_frontier_shmem_init(void)
{
	bool		found;
	int			tranche = ws_lwlock_tranche_id();

	frontier = ShmemInitStruct("write_scaling frontier",
							   ws_frontier_shmem_size(), &found);
	if (found)
		return;

	LWLockInitialize(&frontier->slots_lock, tranche);
	frontier->nslots = ws_max_event_stores;
	frontier->nbackends = MaxBackends;
	frontier->slots = (WsStoreSlot *) ((char *) frontier +
									   MAXALIGN(sizeof(WsFrontierShared)));
	frontier->backends = (WsBackendReservations *)
		(frontier->slots + frontier->nslots);

	for (int i = 0; i < frontier->nslots; i++)
	{
		WsStoreSlot *slot = &frontier->slots[i];

		slot->dboid = InvalidOid;
		slot->relid = InvalidOid;
		LWLockInitialize(&slot->lock, tranche);
		slot->loaded = false;
		for (int c = 0; c < WS_NUM_COUNTERS; c++)
			pg_atomic_init_u64(&slot->counters[c], 0);
	}
	for (int b = 0; b < frontier->nbackends; b++)
	{
		frontier->backends[b].pid = 0;
		for (int e = 0; e < WS_MAX_STORES_PER_XACT; e++)
			frontier->backends[b].entries[e].slot = -1;
	}
}

/*
 * ws_frontier_register_callbacks hooks the registry into transaction end.
 */
void
ws_frontier_register_callbacks(void)
{
	RegisterXactCallback(frontier_xact_callback, NULL);
	RegisterSubXactCallback(frontier_subxact_callback, NULL);
}

/*
 * ws_frontier_require raises an error naming "what" unless the library was
 * preloaded, so that shared memory exists.
 */
void
ws_frontier_require(const char *what)
{
	if (frontier == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s requires write_scaling to be loaded via shared_preload_libraries", what),
				 errdetail("Global positions of event stores are handed out and tracked in shared memory."),
				 errhint("Add write_scaling to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/*
 * ws_frontier_attach returns the slot of the events table relid in this
 * database, assigning a free one on first use.  The caller holds a lock on
 * the table, so it cannot be dropped meanwhile.
 */
int
ws_frontier_attach(Oid relid)
{
	int			result = -1;
	int			free_slot = -1;

	ws_frontier_require("appending to or reading an event store");

	LWLockAcquire(&frontier->slots_lock, LW_SHARED);
	for (int i = 0; i < frontier->nslots; i++)
	{
		if (frontier->slots[i].relid == relid &&
			frontier->slots[i].dboid == MyDatabaseId)
		{
			result = i;
			break;
		}
	}
	LWLockRelease(&frontier->slots_lock);
	if (result >= 0)
		return result;

	LWLockAcquire(&frontier->slots_lock, LW_EXCLUSIVE);
	for (int i = 0; i < frontier->nslots; i++)
	{
		WsStoreSlot *slot = &frontier->slots[i];

		if (slot->relid == relid && slot->dboid == MyDatabaseId)
		{
			result = i;
			break;
		}
		if (free_slot < 0 && slot->dboid == InvalidOid)
			free_slot = i;
	}
	if (result < 0 && free_slot < 0)
	{
		/*
		 * Full: reclaim a slot of this database whose table is gone without
		 * ws.drop_event_store (DROP TABLE, DROP SCHEMA ... CASCADE).
		 */
		for (int i = 0; i < frontier->nslots && free_slot < 0; i++)
		{
			WsStoreSlot *slot = &frontier->slots[i];

			/*
			 * Committed catalogs do not show a table another transaction
			 * is still creating; that transaction holds a lock on it.
			 */
			if (slot->dboid == MyDatabaseId && slot->in_flight == 0 &&
				!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(slot->relid)) &&
				ConditionalLockRelationOid(slot->relid, AccessExclusiveLock))
				free_slot = i;
		}
	}
	if (result < 0 && free_slot >= 0)
	{
		WsStoreSlot *slot = &frontier->slots[free_slot];

		/* A free slot has no backend entries, so its lock is not needed. */
		slot->dboid = MyDatabaseId;
		slot->relid = relid;
		slot->loaded = false;
		slot->next_position = 1;
		slot->max_committed = 0;
		slot->in_flight = 0;
		for (int c = 0; c < WS_NUM_COUNTERS; c++)
			pg_atomic_write_u64(&slot->counters[c], 0);
		result = free_slot;
	}
	LWLockRelease(&frontier->slots_lock);

	if (result < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many event stores in use"),
				 errdetail("All %d event store slots of shared memory are taken.",
						   frontier->nslots),
				 errhint("Raise write_scaling.max_event_stores and restart the server.")));
	return result;
}

/*
 * ws_frontier_is_loaded says whether the slot's counter has been read from
 * its table since startup.
 */
bool
ws_frontier_is_loaded(int slot)
{
	WsStoreSlot *s = &frontier->slots[slot];
	bool		loaded;

	LWLockAcquire(&s->lock, LW_SHARED);
	loaded = s->loaded;
	LWLockRelease(&s->lock);
	return loaded;
}

/*
 * ws_frontier_load sets the slot's counter after the highest stored
 * position, unless another backend did so first.  max_position must come
 * from a snapshot taken after the slot was attached; since nothing can be
 * reserved before the slot is loaded, two loaders read the same value.
 */
void
ws_frontier_load(int slot, int64 max_position)
{
	WsStoreSlot *s = &frontier->slots[slot];

	LWLockAcquire(&s->lock, LW_EXCLUSIVE);
	if (!s->loaded)
	{
		s->next_position = max_position + 1;
		s->max_committed = max_position;
		s->loaded = true;
	}
	LWLockRelease(&s->lock);
}

/*
 * ws_frontier_reserve hands out count consecutive positions and records
 * them as in flight until the current (sub)transaction ends.  Returns the
 * first.  The slot must be loaded.
 */
int64
ws_frontier_reserve(int slot, int count)
{
	WsStoreSlot *s = &frontier->slots[slot];
	WsBackendReservations *me = my_backend();
	WsBackendEntry *entry = NULL;
	WsBackendEntry *unused = NULL;
	int64		first;
	SubTransactionId subid = GetCurrentSubTransactionId();

	Assert(count > 0);

	/* Make room locally first: nothing can fail once positions are out. */
	if (n_local_reservations >= max_local_reservations)
	{
		int			newmax = Max(16, max_local_reservations * 2);

		if (local_reservations == NULL)
			local_reservations = MemoryContextAlloc(TopMemoryContext,
													newmax * sizeof(LocalReservation));
		else
			local_reservations = repalloc(local_reservations,
										  newmax * sizeof(LocalReservation));
		max_local_reservations = newmax;
	}

	LWLockAcquire(&s->lock, LW_EXCLUSIVE);
	Assert(s->loaded);
	for (int e = 0; e < WS_MAX_STORES_PER_XACT; e++)
	{
		if (me->entries[e].slot == slot)
			entry = &me->entries[e];
		else if (unused == NULL && me->entries[e].slot < 0)
			unused = &me->entries[e];
	}
	if (entry == NULL && unused == NULL)
	{
		LWLockRelease(&s->lock);
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("cannot append to more than %d event stores in one transaction",
						WS_MAX_STORES_PER_XACT)));
	}

	first = s->next_position;
	s->next_position += count;
	if (entry == NULL)
	{
		/* Positions only grow, so an existing entry already holds the min. */
		unused->min_position = first;
		unused->slot = slot;
		s->in_flight++;
	}
	me->pid = MyProcPid;
	LWLockRelease(&s->lock);

	/* Extend the last reservation when it is the same store and level. */
	if (n_local_reservations > 0 &&
		local_reservations[n_local_reservations - 1].slot == slot &&
		local_reservations[n_local_reservations - 1].subid == subid)
		local_reservations[n_local_reservations - 1].last = first + count - 1;
	else
	{
		LocalReservation *r = &local_reservations[n_local_reservations++];

		r->slot = slot;
		r->subid = subid;
		r->first = first;
		r->last = first + count - 1;
	}
	return first;
}

/*
 * ws_frontier_safe_position returns the safe position of a loaded slot: every
 * event at or below it that will ever be visible is visible to a snapshot
 * taken after this call returns.
 */
int64
ws_frontier_safe_position(int slot)
{
	WsStoreSlot *s = &frontier->slots[slot];
	int64		safe;

	LWLockAcquire(&s->lock, LW_SHARED);
	safe = s->next_position - 1;
	if (s->in_flight > 0)
	{
		for (int b = 0; b < frontier->nbackends; b++)
		{
			WsBackendEntry *entries = frontier->backends[b].entries;

			for (int e = 0; e < WS_MAX_STORES_PER_XACT; e++)
				if (entries[e].slot == slot && entries[e].min_position - 1 < safe)
					safe = entries[e].min_position - 1;
		}
	}
	safe = Min(safe, s->max_committed);
	LWLockRelease(&s->lock);
	return safe;
}

/*
 * ws_frontier_count adds n to one of the slot's counters.
 */
void
ws_frontier_count(int slot, WsStoreCounter counter, int64 n)
{
	pg_atomic_fetch_add_u64(&frontier->slots[slot].counters[counter], n);
}

/*
 * ws_frontier_forget_at_commit frees the slot of a dropped events table when
 * the dropping transaction commits.  Freeing it earlier would be wrong if
 * the drop rolled back while other backends still cache the slot.
 */
void
ws_frontier_forget_at_commit(Oid relid)
{
	if (frontier == NULL)
		return;
	if (n_dropped >= lengthof(dropped))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("cannot drop more than %d event stores in one transaction",
						(int) lengthof(dropped))));
	dropped[n_dropped].relid = relid;
	dropped[n_dropped].subid = GetCurrentSubTransactionId();
	n_dropped++;
}

/*
 * ws_frontier_report copies out the slots of the current database into a
 * palloc'd array and returns how many there are.
 */
int
ws_frontier_report(WsStoreReport **reports)
{
	int			n = 0;

	if (frontier == NULL)
	{
		*reports = NULL;
		return 0;
	}
	*reports = palloc0(sizeof(WsStoreReport) * frontier->nslots);

	LWLockAcquire(&frontier->slots_lock, LW_SHARED);
	for (int i = 0; i < frontier->nslots; i++)
	{
		WsStoreSlot *s = &frontier->slots[i];
		WsStoreReport *r = &(*reports)[n];

		if (s->dboid != MyDatabaseId)
			continue;
		n++;
		r->relid = s->relid;
		for (int c = 0; c < WS_NUM_COUNTERS; c++)
			r->counters[c] = (int64) pg_atomic_read_u64(&s->counters[c]);

		LWLockAcquire(&s->lock, LW_SHARED);
		r->loaded = s->loaded;
		r->last_position = s->next_position - 1;
		r->in_flight = s->in_flight;
		for (int b = 0; b < frontier->nbackends && s->in_flight > 0; b++)
		{
			WsBackendReservations *be = &frontier->backends[b];

			for (int e = 0; e < WS_MAX_STORES_PER_XACT; e++)
			{
				if (be->entries[e].slot == i &&
					(r->oldest_in_flight == 0 ||
					 be->entries[e].min_position < r->oldest_in_flight))
				{
					r->oldest_in_flight = be->entries[e].min_position;
					r->oldest_pid = be->pid;
				}
			}
		}
		LWLockRelease(&s->lock);
		r->safe_position = r->loaded ? ws_frontier_safe_position(i) : 0;
	}
	LWLockRelease(&frontier->slots_lock);
	return n;
}

/*
 * ws_frontier_appended_in_xact says whether the current transaction holds
 * positions, that is, appended to an event store.
 */
bool
ws_frontier_appended_in_xact(void)
{
	return n_local_reservations > 0;
}

static void
frontier_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (n_local_reservations > 0)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that has appended to an event store"),
						 errdetail("Its uncommitted positions would outlive this session and hold back every reader of the store.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			release_all(true);
			free_dropped_slots();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			release_all(false);
			n_dropped = 0;
			break;
		default:
			break;
	}
}

static void
frontier_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						  SubTransactionId parentSubid, void *arg)
{
	int			kept = 0;
	int			touched_slots[WS_MAX_STORES_PER_XACT];
	int			ntouched = 0;

	/* A drop rolled back with its savepoint frees nothing. */
	for (int i = 0; i < n_dropped; i++)
	{
		if (dropped[i].subid != mySubid)
			dropped[kept++] = dropped[i];
		else if (event == SUBXACT_EVENT_COMMIT_SUB)
		{
			dropped[i].subid = parentSubid;
			dropped[kept++] = dropped[i];
		}
		else if (event != SUBXACT_EVENT_ABORT_SUB)
			dropped[kept++] = dropped[i];
	}
	n_dropped = kept;
	kept = 0;

	if (n_local_reservations == 0)
		return;

	if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		for (int i = 0; i < n_local_reservations; i++)
			if (local_reservations[i].subid == mySubid)
				local_reservations[i].subid = parentSubid;
		return;
	}
	if (event != SUBXACT_EVENT_ABORT_SUB)
		return;

	/* Drop the aborted subtransaction's reservations, keeping order. */
	for (int i = 0; i < n_local_reservations; i++)
	{
		LocalReservation *r = &local_reservations[i];

		if (r->subid == mySubid)
		{
			bool		seen = false;

			for (int t = 0; t < ntouched; t++)
				seen |= (touched_slots[t] == r->slot);
			/* A backend holds at most WS_MAX_STORES_PER_XACT slots. */
			if (!seen)
				touched_slots[ntouched++] = r->slot;
			continue;
		}
		local_reservations[kept++] = *r;
	}
	n_local_reservations = kept;

	for (int t = 0; t < ntouched; t++)
		recompute_entry(touched_slots[t]);
}

/*
 * recompute_entry sets this backend's entry for slot to the lowest position
 * it still holds there, or clears it.
 */
static void
recompute_entry(int slot)
{
	WsStoreSlot *s = &frontier->slots[slot];
	WsBackendReservations *me = my_backend();
	int64		min_position = 0;

	for (int i = 0; i < n_local_reservations; i++)
	{
		LocalReservation *r = &local_reservations[i];

		if (r->slot == slot && (min_position == 0 || r->first < min_position))
			min_position = r->first;
	}

	LWLockAcquire(&s->lock, LW_EXCLUSIVE);
	for (int e = 0; e < WS_MAX_STORES_PER_XACT; e++)
	{
		if (me->entries[e].slot != slot)
			continue;
		if (min_position == 0)
		{
			me->entries[e].slot = -1;
			s->in_flight--;
		}
		else
			me->entries[e].min_position = min_position;
	}
	LWLockRelease(&s->lock);
}

/*
 * release_all clears every entry of this backend.  On commit the highest
 * position it wrote becomes the slot's max_committed.  Runs in a transaction
 * callback, so it must not fail: it only takes LWLocks.
 */
static void
release_all(bool committed)
{
	WsBackendReservations *me;

	if (n_local_reservations == 0)
		return;
	me = my_backend();

	for (int e = 0; e < WS_MAX_STORES_PER_XACT; e++)
	{
		int			slot = me->entries[e].slot;
		WsStoreSlot *s;
		int64		last = 0;

		if (slot < 0)
			continue;
		s = &frontier->slots[slot];
		for (int i = 0; i < n_local_reservations; i++)
			if (local_reservations[i].slot == slot)
				last = Max(last, local_reservations[i].last);

		LWLockAcquire(&s->lock, LW_EXCLUSIVE);
		if (committed && last > s->max_committed)
			s->max_committed = last;
		me->entries[e].slot = -1;
		s->in_flight--;
		LWLockRelease(&s->lock);
	}
	n_local_reservations = 0;
}

static void
free_dropped_slots(void)
{
	if (n_dropped == 0)
		return;

	LWLockAcquire(&frontier->slots_lock, LW_EXCLUSIVE);
	for (int d = 0; d < n_dropped; d++)
	{
		for (int i = 0; i < frontier->nslots; i++)
		{
			WsStoreSlot *s = &frontier->slots[i];

			/* The drop held AccessExclusiveLock: nobody can be in flight. */
			if (s->relid == dropped[d].relid && s->dboid == MyDatabaseId &&
				s->in_flight == 0)
			{
				s->dboid = InvalidOid;
				s->relid = InvalidOid;
			}
		}
	}
	LWLockRelease(&frontier->slots_lock);
	n_dropped = 0;
}
