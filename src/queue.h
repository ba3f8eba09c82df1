/*-------------------------------------------------------------------------
 *
 * queue.h
 *	  The async write queue: enqueues, its shared state and its workers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WS_QUEUE_H
#define WS_QUEUE_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "nodes/pg_list.h"

/* Queue workers per database, at most. */
#define WS_MAX_QUEUE_WORKERS	32

/* Topics per database whose counters shared memory keeps. */
#define WS_MAX_TOPIC_COUNTERS	64

typedef enum QueueWorkerState
{
	QUEUE_WORKER_STOPPED = 0,
	QUEUE_WORKER_IDLE,
	QUEUE_WORKER_APPLYING
} QueueWorkerState;

/* What the launcher passes a queue worker in bgw_extra. */
typedef struct WsQueueWorkerArgs
{
	int			worker;			/* 1..write_scaling.queue_workers */
	char		datname[NAMEDATALEN];
} WsQueueWorkerArgs;

/* Messages of one topic that a transaction enqueued, applied or failed. */
typedef struct TopicCounts
{
	int32		topic_id;
	int64		enqueued;
	int64		applied;
	int64		retried;
	int64		dead_lettered;
} TopicCounts;

extern Size ws_queue_shmem_size(void);
extern void ws_queue_shmem_init(void);
extern void ws_queue_register_callbacks(void);

/* For the launcher (worker.c). */
extern bool ws_queue_wanted(Oid dboid);
extern int	ws_queue_worker_pid(Oid dboid, int worker);
extern void ws_queue_note_topics(Oid dboid, bool has_topics);
extern void ws_queue_forget_databases(List *live_dboids);
extern void ws_queue_forget_slot(Oid dboid);

/* For the queue workers (queue_worker.c). */
extern void ws_queue_worker_attach(Oid dboid, int worker);
extern void ws_queue_worker_set_state(QueueWorkerState state, int64 first_id, int64 last_id);
extern void ws_queue_worker_batch_done(TopicCounts *counts, int ncounts, int64 applied);
extern int	ws_queue_lane_owner(int32 topic_id, int32 lane, int nworkers);

#endif							/* WS_QUEUE_H */
