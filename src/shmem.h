/*-------------------------------------------------------------------------
 *
 * shmem.h
 *	  Shared memory of write_scaling: requested and laid out at startup.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WS_SHMEM_H
#define WS_SHMEM_H

extern void ws_shmem_install_hooks(void);
extern int	ws_lwlock_tranche_id(void);

#endif							/* WS_SHMEM_H */
