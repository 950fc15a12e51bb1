/* Decode one window of a JPEG, and only what the window needs (libjpeg's scanline API).
 *
 * Why by hand: FFCV's imdecode decodes the whole image (its crop option is a lossless tjTransform at 8/16-pixel
 * granularity, which re-encodes the window before decoding it) with libjpeg-turbo's fast integer IDCT, which
 * differs from Pillow's decode by a few levels. A random-resized crop covers about half the image on average.
 * Here libjpeg-turbo stops after the window's last row, runs the inverse DCT, upsampling and colour conversion
 * only for its rows (jpeg_skip_scanlines) and its columns (jpeg_crop_scanline), and uses the accurate IDCT and
 * fancy upsampling, as Pillow does: the window's pixels equal Pillow's decode of the whole image, bit for bit.
 *
 * Used from numba through ctypes (pipelines/ffcv_loader.py); the Python module around it is empty, as in FFCV.
 */
#include <Python.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <jpeglib.h>

struct error_manager {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
};

static void jump_out(j_common_ptr cinfo) { longjmp(((struct error_manager *)cinfo->err)->jump, 1); }
static void stay_quiet(j_common_ptr cinfo) { (void)cinfo; }  /* warnings (e.g. extraneous bytes) are not errors */

/* Writes rows [top, top + height) of the image into `out` (one row every `stride` bytes, RGB), each row starting
 * at a column at or left of `left` and covering at least [left, left + width). Returns where column `left` lies
 * in those rows, or: -1 the data is not a JPEG that decodes, -2 the window is outside the image, -3 a decoded
 * row would be longer than `stride`. */
int neatt_decode_window(const uint8_t *jpeg, uint64_t size, uint32_t top, uint32_t left, uint32_t height,
                        uint32_t width, uint8_t *out, uint64_t stride) {
    struct jpeg_decompress_struct cinfo;
    struct error_manager err;
    int result;
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = jump_out;
    err.pub.output_message = stay_quiet;
    jpeg_create_decompress(&cinfo);
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    jpeg_mem_src(&cinfo, jpeg, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);
    cinfo.out_color_space = JCS_RGB;
    cinfo.dct_method = JDCT_ISLOW;
    jpeg_start_decompress(&cinfo);
    if ((uint64_t)top + height > cinfo.output_height || (uint64_t)left + width > cinfo.output_width) {
        result = -2;
    } else {
        /* One more column on each side: fancy upsampling of the chroma reads the neighbours of a pixel, and at
         * the edge of a cropped scanline it would repeat the edge instead. The rows need no margin: libjpeg
         * keeps the context rows itself when it skips. */
        JDIMENSION first = left > 0 ? left - 1 : 0;
        JDIMENSION count = (left + width < cinfo.output_width ? left + width + 1 : cinfo.output_width) - first;
        if (count < cinfo.output_width)
            jpeg_crop_scanline(&cinfo, &first, &count);  /* moves `first` left to an iMCU edge */
        if ((uint64_t)count * 3 > stride) {
            result = -3;
        } else {
            if (top > 0)
                jpeg_skip_scanlines(&cinfo, top);
            while (cinfo.output_scanline < top + height) {
                JSAMPROW row = out + (uint64_t)(cinfo.output_scanline - top) * stride;
                jpeg_read_scanlines(&cinfo, &row, 1);
            }
            result = (int)(left - first);
        }
    }
    jpeg_abort_decompress(&cinfo);  /* the rows below the window are never decoded */
    jpeg_destroy_decompress(&cinfo);
    return result;
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpeg_window",
                                    "Empty: the decoder is called through ctypes (see neatt_decode_window)", -1,
                                    NULL};

PyMODINIT_FUNC PyInit__jpeg_window(void) { return PyModule_Create(&module); }
