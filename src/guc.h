/*-------------------------------------------------------------------------
 *
 * guc.h
 *	  The write_scaling.* settings.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WS_GUC_H
#define WS_GUC_H

extern int	ws_max_event_stores;

extern void ws_define_gucs(void);

#endif							/* WS_GUC_H */
