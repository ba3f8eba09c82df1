/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  Every write_scaling.* setting, defined in one place.
 *
 * Each setting is documented in README.md ("Settings") with its default and
 * whether it needs a restart.  The prefix is reserved, so a typo such as
 * write_scaling.max_event_store is an error instead of a silent placeholder.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/guc.h"

#include "guc.h"

/* Event stores that can hold positions in shared memory, all databases. */
int			ws_max_event_stores = 64;

/*
 * ws_define_gucs registers the settings; called from _PG_init.
 */
void
ws_define_gucs(void)
{
	DefineCustomIntVariable("write_scaling.max_event_stores",
							"Maximum number of event stores, across all databases, that can be appended to.",
							"Each event store takes one slot of shared memory for its position counter and in-flight appends.",
							&ws_max_event_stores,
							64, 1, 10000,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("write_scaling");
}
