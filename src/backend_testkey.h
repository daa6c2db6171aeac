/*
 * Test hooks of the "testkey" backend (backend_testkey.c): a software EC key behind the
 * hardware-key slots, compiled only into the test copy of the library.
 */
#ifndef PROVHSM_BACKEND_TESTKEY_H
#define PROVHSM_BACKEND_TESTKEY_H

#ifdef PROVHSM_TEST_HOOKS
/* Signatures made by testkey keys in this process (key_sign calls that succeeded). */
unsigned long provhsm_testkey_test_signs(void);
/* Non-zero: key_sign fails as a device that went away would (PROVHSM_E_NO_DEVICE). */
void provhsm_testkey_test_fail_signing(int fail);
#endif

#endif
